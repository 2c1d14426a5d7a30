"""Errors that go back to the client as they are."""


class InvalidInput(ValueError):
    """A request input broke a rule. The message names the input and the rule."""

    def __init__(self, input_name: str, rule: str):
        super().__init__(f"invalid input '{input_name}': {rule}")
        self.input_name = input_name
        self.rule = rule
