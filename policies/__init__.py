"""Policy schema and loader (schema.py) and the shipped YAML policies (default.yaml). Data only:
loads no model. Hot reload, history and rollback are still to come (issue 4)."""
