# imsearch: the three commands a newcomer needs are `make setup`, `make index`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PHOTOS ?= ../shared/data

.PHONY: setup index test lint bench clean

setup:  ## create .venv and install imsearch with every extra the tests use (+ Debian's chromium)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx,postgres,ray]'
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }
	@$(BIN)/imsearch --version

index:  ## index the sample photos into ./imsearch-data (SQLite + FAISS, offline backbone)
	$(BIN)/imsearch index $(PHOTOS)

test:  ## the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/mypy

bench:
	$(BIN)/python -m bench.extract

clean:
	rm -rf $(VENV) imsearch-data .pytest_cache .mypy_cache .ruff_cache
