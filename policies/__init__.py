"""Policy schema, loader and the shipped YAML policies (data only: loads no model).
Not built yet (issue 4)."""
