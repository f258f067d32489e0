"""Seeded synthetic loan-SMS traffic with labelled attack episodes (`smsstream simulate`)."""

from smsstream.simulate.run import Options, Result, simulate

__all__ = ["Options", "Result", "simulate"]
