"""Plans, scheduling and running."""
