"""One router per resource: search, images, collection views (labels, duplicates, stats), jobs, web page."""
