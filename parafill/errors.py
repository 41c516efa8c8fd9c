"""`real_error`: the error a failure is about, out of the exception groups task groups raise.

anyio wraps whatever fails inside a task group in an ExceptionGroup; a user, a CLI message or an
HTTP error body should name that error, never "unhandled errors in a TaskGroup".
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup


def real_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups; `exc` itself when it is none."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
