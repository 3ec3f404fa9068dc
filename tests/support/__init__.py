"""Helpers the tests share: free ports, a real Mosquitto broker, waiting for conditions."""
