"""Planners: turn a request into a Plan."""
