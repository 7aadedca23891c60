"""Final answers of math responses: where a response states one, and when two answers agree.

Used by the ``math`` rule. Extraction follows what math datasets teach models to write: GSM8K's
``#### 72`` line, MATH's ``\\boxed{72}``, or, for a model that writes neither, the last number.

Two answers that are both plain numbers (``42``, ``-3``, ``1,234``, ``2.50``, ``3/4``,
``\\frac{3}{4}``) are compared exactly as rationals, so ``0.75 == 3/4`` and ``2.50 == 2.5`` but
``0.333 != 1/3``. Anything else (``\\frac{\\sqrt{2}}{2}``, ``x^2+1``) is compared symbolically by
`math-verify <https://github.com/huggingface/Math-Verify>`_ when it is installed (the ``math``
extra), else as normalised strings (spaces, ``$``, ``\\left``/``\\right`` and ``\\dfrac`` ignored).
Numbers never go through math-verify: exact rationals need no SymPy and no timeout, and give
the same answer whether or not the extra is installed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from functools import cache

log = logging.getLogger(__name__)

# A number as written in prose: optional minus (not one of "10-3"), thousands commas, decimals,
# a fraction bar. Not the tail of a word or of another number ("x2", "1.2.3").
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:/\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Decoration around a number: units in \text{}, LaTeX spacing, currency and percent signs.
_NUMBER_NOISE = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}|\\[,;:! ]|\\left|\\right|\\\$|\\%|[$%\s~]")
_EXPRESSION_NOISE = re.compile(r"\\[,;:! ]|\\left|\\right|\$|\s")
_SYMPY_TIMEOUT_S = 5


def extract_answer(response: str) -> str | None:
    """The final answer a response states, as text, or None when it states none.

    In order of precedence:

    1. the rest of the line after the last ``####`` (when it is not a number on its own and holds
       no LaTeX, its first number: ``#### 42 apples`` gives ``42``);
    2. the content of the last ``\\boxed{...}`` (nested braces allowed);
    3. the last number in the response: ``-3``, ``1,234``, ``2.5``, ``3/4``.
    """
    marked = _after_last_hashes(response)
    if marked:
        if parse_number(marked) is None and "\\" not in marked:
            first = _NUMBER.search(marked)
            return first.group() if first else marked
        return marked
    boxed = _last_boxed(response)
    if boxed:
        return boxed
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def reference_answer(value: object) -> str:
    """The answer a dataset's answer column states: ``"#### 72"`` or a whole GSM8K solution gives
    ``72``, ``"\\boxed{72}"`` gives ``72``, anything else is taken whole (``42``, ``"1,234"``,
    ``"3/4"``); numbers in the column (int, float) are read as written."""
    text = value if isinstance(value, str) else str(value)
    return _after_last_hashes(text) or _last_boxed(text) or text.strip()


def parse_number(text: str) -> Fraction | None:
    """``text`` as an exact rational when it is one plain number, else None.

    Accepts an optional sign (``-`` or the Unicode minus), thousands commas (``1,234``), decimals,
    exponents (``1e3``), ``a/b``, ``\\frac{a}{b}`` (also ``\\dfrac``, ``\\tfrac``), a trailing
    full stop, ``$``/``\\$``, ``%`` (``50%`` is 50), spaces and units in ``\\text{...}``; with an
    ``=``, the part after the last one (``x = 5`` is 5).
    """
    s = _NUMBER_NOISE.sub("", text.replace("\u2212", "-")).rstrip(".")
    s = s.rpartition("=")[2]
    fraction = _FRAC.fullmatch(s)
    if fraction:
        numerator, denominator = parse_number(fraction[2]), parse_number(fraction[3])
        if numerator is None or not denominator:
            return None
        return (-1 if fraction[1] else 1) * numerator / denominator
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):  # "1/0", or a decimal in a fraction bar ("1.5/2")
        return None


def answers_match(predicted: str, reference: str) -> bool:
    """Whether a predicted answer equals the reference: exactly as numbers when both are plain
    numbers (see :func:`parse_number`), else symbolically (math-verify) or as normalised text."""
    predicted_number, reference_number = parse_number(predicted), parse_number(reference)
    if predicted_number is not None and reference_number is not None:
        return predicted_number == reference_number
    symbolic = _math_verify()
    if symbolic is None:
        return _normalised(predicted) == _normalised(reference)
    return symbolic(predicted, reference)


# ----------------------------------------------------------------------------- helpers


def _after_last_hashes(text: str) -> str:
    """The rest of the line after the last ``####``, stripped ("" when there is none)."""
    before, marker, after = text.rpartition("####")
    if not marker:
        return ""
    return after.strip().split("\n", 1)[0].strip()


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces balance, stripped."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _normalised(expression: str) -> str:
    return _EXPRESSION_NOISE.sub("", expression).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


@cache
def _math_verify() -> Callable[[str, str], bool] | None:
    """math-verify's symbolic comparison, or None when the package is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def equal(predicted: str, reference: str) -> bool:
        # math-verify times out with SIGALRM, which only the main thread may use; elsewhere it runs
        # without a limit (inputs here are one extracted answer, short by construction).
        timeout = _SYMPY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
        try:
            gold = parse(f"${reference.strip('$')}$", parsing_timeout=timeout)
            guess = parse(f"${predicted.strip('$')}$", parsing_timeout=timeout)
            return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))
        except Exception as exc:  # SymPy can fail in many ways on odd input; it is no match
            log.debug("math-verify failed on %r vs %r: %s", predicted, reference, exc)
            return False

    return equal
