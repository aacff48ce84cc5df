"""Tests of the infra."""
