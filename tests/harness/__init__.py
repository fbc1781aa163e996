"""Helpers the tests share (no tests here); see tests/README.md."""
