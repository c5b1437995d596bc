"""Text from etcd, Redis or the state files, made safe to print on an operator's terminal.

Route ids, stored values, rejection reasons and rollout history come from whoever can write
the etcd prefix or the store (another team, a script, a half write). Printed as they are, an
escape sequence in one rewrote the terminal (its title, the screen, a hyperlink; some
terminals answer a query by typing into the shell) and a newline in a key forged a line of
`routes list` ("ok" for a route that is not). Control characters are shown escaped instead.
"""
import re

# C0 (tab and newline too: every printed field is one line), DEL and C1 (ESC's 8-bit forms)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text):
    """``text`` (str, or anything str() makes one of) with each control character shown as
    ``\\xNN``."""
    return CONTROL.sub(_escape, str(text))


def _escape(match):
    return f"\\x{ord(match[0]):02x}"
