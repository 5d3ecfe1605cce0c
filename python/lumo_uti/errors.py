"""Exception types of the Unified Token Interface.

Every error names the rule it enforces (``.rule``) so that callers and tests can
react to the kind of failure without parsing the message.
"""

from __future__ import annotations


class UTIDecodeError(ValueError):
    """A token stream breaks the sequence grammar (strict decoding).

    Attributes:
        position: index of the first token at which no valid completion of the
            stream exists, or ``len(ids)`` when the stream ends inside a span.
        rule: the grammar rule broken, e.g. ``"image.count"`` (see
            ``lumo_uti.grammar.RULES``).
    """

    def __init__(self, position: int, rule: str, message: str):
        self.position = position
        self.rule = rule
        self.detail = message
        super().__init__(f"token {position}: [{rule}] {message}")


class TokenSpaceError(ValueError):
    """A token space spec or ``token_space.json`` breaks an ABI rule.

    ``rule`` names it: ``schema``, ``version``, ``fingerprint``, ``overlap``,
    ``gap``, ``block``, ``base``, ``vocab`` or ``special``.
    """

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(f"token space [{rule}]: {message}")


class TokenizerMismatchError(ValueError):
    """The text tokenizer found differs from the one the token space records."""


class BundleError(ValueError):
    """A bundle directory is missing a file or holds an unusable one."""


class BundleHashMismatchError(BundleError):
    """A file of a bundle does not have the hash ``token_space.json`` records for it.

    Attributes:
        file: the file (or folder) that differs.
        field: the recorded field, e.g. ``"codecs.audio.config_hash"``.
        recorded, found: the two hashes (``"sha256:<hex>"``).
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 recorded: str | None = None, found: str | None = None):
        self.file, self.field, self.recorded, self.found = file, field, recorded, found
        super().__init__(message)


class BundleTokenizerMismatchError(BundleHashMismatchError, TokenizerMismatchError):
    """The text tokenizer of a bundle does not have the hash its token space records."""
