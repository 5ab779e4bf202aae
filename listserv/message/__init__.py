"""Pure work on messages: parsing untrusted mail, transforms, signing."""
