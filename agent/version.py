"""The agent's own version, reported in hello and enrolment."""

__version__ = "0.1.0"
