"""Every exception type of ``lumo_uti``, in one module (docs/errors.md describes each).

All derive from ``UTIError``: catch it to catch every failure the library
reports on purpose (the ``lumo`` command turns one into one line on stderr and
exit status 2). Each also derives from the built-in type callers caught before
it had its own (``ValueError`` for bad input, ``KeyError`` for a missing name,
``RuntimeError`` for a run that gave up), so ``except ValueError`` still works.
Types that carry a ``rule`` name the check that failed, so callers and tests
can react to the kind of failure without parsing the message.
"""

from __future__ import annotations


class UTIError(Exception):
    """Base of every ``lumo_uti`` error (and of ``lumo_model``'s, see ``lumo_model.errors``)."""


# -- token streams and token spaces -------------------------------------------------------
class UTIDecodeError(UTIError, ValueError):
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


class TokenSpaceError(UTIError, ValueError):
    """A token space breaks an ABI rule, or a value does not fit it.

    ``rule`` names it: ``schema``, ``version``, ``fingerprint``, ``overlap``,
    ``gap``, ``block``, ``base``, ``vocab`` or ``special`` for a spec or
    ``token_space.json`` that breaks the ABI; ``range`` for a code, codebook,
    grid side or number of codebooks that its block cannot hold.
    """

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(f"token space [{rule}]: {message}")


class TokenSpaceLookupError(TokenSpaceError, KeyError):
    """The token space has no block or special token of that name (or kind).

    ``rule`` is ``block`` or ``special``. Also a ``KeyError``, as a missing
    name always was.
    """

    __str__ = Exception.__str__  # the message as it is (KeyError would quote it)


class TokenizerMismatchError(UTIError, ValueError):
    """The text tokenizer found differs from the one the token space records."""


# -- bundles and codecs -------------------------------------------------------------------
class BundleError(UTIError, ValueError):
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


class CodecError(UTIError, ValueError):
    """A codec directory or option is unusable; the message names the file or option."""


# -- the lumo command and the audit -------------------------------------------------------
class UsageError(UTIError, ValueError):
    """Bad command-line input: the ``lumo`` command exits with status 2."""


class AuditUsageError(UTIError, ValueError):
    """Bad audit input (missing directory, malformed gates file, no CUDA, data without a codec)."""


class GatesError(UTIError, ValueError):
    """A gates file is missing, not JSON, or breaks the format; the message says where."""


class DataError(UTIError, ValueError):
    """The evaluation data is missing or unreadable; the message names the path."""


# -- datasets -----------------------------------------------------------------------------
class DocumentError(UTIError, ValueError):
    """A record that cannot become a document (the message is the reason recorded in errors.jsonl)."""


class ShardFolderError(UTIError, ValueError):
    """The output folder holds something a run must not overwrite or cannot resume."""


class TooManyErrors(UTIError, RuntimeError):
    """More documents failed than ``max_errors`` allows."""


class IndexedFormatError(UTIError, ValueError):
    """A ``.idx`` / ``.bin`` pair that is not a well-formed indexed dataset."""


__all__ = [
    "AuditUsageError", "BundleError", "BundleHashMismatchError", "BundleTokenizerMismatchError", "CodecError",
    "DataError", "DocumentError", "GatesError", "IndexedFormatError", "ShardFolderError", "TokenSpaceError",
    "TokenSpaceLookupError", "TokenizerMismatchError", "TooManyErrors", "UTIDecodeError", "UTIError", "UsageError",
]
