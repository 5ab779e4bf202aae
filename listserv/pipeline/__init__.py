"""Incoming mail after intake: rules, moderation, posting, commands."""
