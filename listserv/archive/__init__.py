"""The archive: mbox files, search index, HTML pages, access by mail."""
