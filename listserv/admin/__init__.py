"""Administrative operations: domains, member import, retention."""
