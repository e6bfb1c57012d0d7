"""DSP front end: small synchronous frame stages on 48 kHz mono int16 10 ms frames."""
