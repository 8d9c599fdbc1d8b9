"""Vigil plant simulator: synthetic degrading pumps as history files or live MQTT readings."""
