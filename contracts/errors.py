"""The one error tree of tradeflow; the runtime decides ack / nak / term from the class.

    TradeflowError
     ├── BadInput            the message can never succeed: dead-letter, then term
     │    ├── TooLarge           body over the size limit
     │    ├── Undecodable        not JSON, wrong types, unknown fields, a value out of range
     │    ├── UnknownSubject     a subject no stage owns
     │    ├── SubjectMismatch    body's symbol (or ce-type) disagrees with the subject
     │    └── Rejected           the handler refuses the event for good (e.g. a bar out of order)
     ├── Transient           infrastructure hiccup: nak with backoff, try again
     │    ├── NatsUnavailable
     │    ├── RedisUnavailable
     │    └── EffectFailed      an agent's ledger or log could not be written
     ├── ConfigError         a setting is missing or invalid at start-up
     └── Fatal               the process cannot go on (a recorder that lost its writer fence): the
                             worker stops without acking its batch, the service exits 70 and is restarted
"""

from __future__ import annotations


class TradeflowError(Exception):
    """Base of every error tradeflow raises on purpose."""


class BadInput(TradeflowError):
    """Raised when a message can never be processed; it goes to the DLQ without retries."""

    reason = "bad_input"


class TooLarge(BadInput):
    """Raised when a body is larger than the configured limit."""

    reason = "too_large"


class Undecodable(BadInput):
    """Raised when a body is not valid JSON for its event type."""

    reason = "undecodable"


class UnknownSubject(BadInput):
    """Raised when a subject belongs to no pipeline stage."""

    reason = "unknown_subject"


class SubjectMismatch(BadInput):
    """Raised when the body (symbol) or the ce-type header contradicts the subject."""

    reason = "subject_mismatch"


class Rejected(BadInput):
    """Raised by a handler for a well-formed event it can never accept (out of order, duplicate bar)."""

    reason = "rejected"


class Transient(TradeflowError):
    """Raised when a dependency is unavailable for now; the message is retried later."""

    reason = "transient"


class NatsUnavailable(Transient):
    """Raised when NATS or JetStream did not answer in time."""

    reason = "nats_unavailable"


class RedisUnavailable(Transient):
    """Raised when Redis cannot be reached."""

    reason = "redis_unavailable"


class EffectFailed(Transient):
    """Raised when an agent could not make its effects durable (its ledger, its log file)."""

    reason = "effect_failed"


class ConfigError(TradeflowError):
    """Raised at start-up when a setting is missing or invalid; names the variable."""


class PublishDenied(TradeflowError):
    """Raised when NATS refuses a publish for want of permission: a deployment error, never retried."""

    reason = "publish_denied"


class Fatal(TradeflowError):
    """Raised when this process must stop: retrying in place cannot help (another process now holds what it
    needs). Its batch is left unacked, for JetStream to redeliver to whoever can handle it."""
