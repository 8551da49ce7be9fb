"""What keeps a verdict honest: screening, the shift check, the negative control, the control model, and
the decision."""
