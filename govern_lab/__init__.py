"""The flood lab: namespaces, a real Postfix, traffic, scenarios."""
