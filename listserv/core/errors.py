"""Exceptions. Inside the code we raise; only the edges (SMTP intake, CLI) format replies."""

from __future__ import annotations


class ListservError(Exception):
    """Base of every error listserv raises on purpose. Its message is fit for a user."""

    smtp_code = 451
    enhanced = "4.3.0"

    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced} {self}"


class ConfigError(ListservError):
    """The configuration file or environment is wrong."""


class UsageError(ListservError):
    """A refused operation: unknown list, bad address, bad setting value..."""


class UnknownRecipient(ListservError):
    smtp_code = 550
    enhanced = "5.1.1"


class MessageRejected(ListservError):
    smtp_code = 550
    enhanced = "5.7.1"


class MalformedMessage(ListservError):
    smtp_code = 550
    enhanced = "5.6.0"


class StructureRefused(ListservError):
    """Absurd structure (MIME nested deeper than untrusted.MAX_MIME_DEPTH, more parts than
    untrusted.MAX_MIME_PARTS): refused at DATA."""

    smtp_code = 554
    enhanced = "5.6.0"


class MessageTooBig(ListservError):
    smtp_code = 552
    enhanced = "5.3.4"


class TemporaryFailure(ListservError):
    smtp_code = 451
    enhanced = "4.3.0"
