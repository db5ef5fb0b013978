"""The dashboard service: a live web page over the pipeline, with controls."""
