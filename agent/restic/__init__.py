"""The agent's restic wrapper: version detection, command building, output
parsing, error classification and process supervision (stdlib only)."""
