"""The archive: messages and their bytes in the database (store, index), the archive job and
its mbox export (mbox), search, HTML pages, access by mail."""
