"""What tests, benches and the soak share: process launchers, image generators, fault drivers.

scripts/ never imports tests/; tests import from here. Loopback only.
"""
