"""Shared by the Python driver scripts of tests/drivers.rs: the connection settings from the
environment, the statements every client runs, and the JSON report the Rust test checks."""

import datetime
import json
import os
import sys

HOST = os.environ["PGR_HOST"]
PORT = int(os.environ["PGR_PORT"])
USER = os.environ["PGR_USER"]
PASSWORD = os.environ["PGR_PASSWORD"]
DB = os.environ["PGR_DB"]
# Customers to read (masked) and, for solutions, the one whose tier is written.
IDS = [int(x) for x in os.environ["PGR_IDS"].split(",")]
WRITE_ID = int(os.environ["PGR_WRITE_ID"]) if os.environ.get("PGR_WRITE_ID") else None
TIER = os.environ.get("PGR_TIER", "")

# The masked read: typed parameters, a date column, text columns with every kind of mask.
READ = (
    "SELECT customer_id, first_name, last_name, email, phone, address, birth_date, tier "
    "FROM customers WHERE customer_id = ANY({p}) ORDER BY customer_id"
)
# A write of a column without PII (allowed for solutions) and one of a PII column (refused 42501).
WRITE = "UPDATE customers SET tier = {p1} WHERE customer_id = {p2}"
PII_WRITE = "UPDATE customers SET email = {p1} WHERE customer_id = {p2}"


def text(v):
    """A value as PostgreSQL's text output shows it (DateStyle ISO), None for NULL."""
    if v is None:
        return None
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return str(v)


def rows_text(rows):
    return [[text(v) for v in r] for r in rows]


def report(obj):
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")
