"""Errors that go back to the client as they are."""

from __future__ import annotations

import re

# The one format of a bad-input error; clients read the input's name back from it (the UI shows the
# error beside that input's control), since a Triton error response carries only a message and a code.
_MESSAGE = "invalid input '{input_name}': {rule}"
_NAMED_INPUT = re.compile(r"invalid input '(?P<name>[A-Z0-9_]+)': ")


class InvalidInput(ValueError):
    """A request input broke a rule. The message names the input and the rule."""

    def __init__(self, input_name: str, rule: str):
        super().__init__(_MESSAGE.format(input_name=input_name, rule=rule))
        self.input_name = input_name
        self.rule = rule


def named_input(message: str) -> str | None:
    """The input an InvalidInput message names (e.g. "HEIGHT"), or None for any other message."""
    match = _NAMED_INPUT.search(message)
    return match["name"] if match else None
