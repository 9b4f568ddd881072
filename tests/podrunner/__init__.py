"""Unit tests of the pod runner (e2e/podrunner): its pure logic, and its shell with real processes."""
