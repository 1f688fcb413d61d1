"""The executable specification: pure-torch functions, one per op, that NeMo is checked against and every fast
kernel is checked against."""
