"""Importing from other list managers: member CSV exports (Google Groups, groups.io), GNU
Mailman 2.1 lists (config.pck) and mbox archives."""
