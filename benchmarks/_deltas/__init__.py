"""The delta benchmark's parts: model changes, calibration inputs, the agent's rebuild in a child process."""
