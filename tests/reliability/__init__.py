"""Tests of the reliability."""
