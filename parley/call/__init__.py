"""The headless client: ``CallClient`` (an aiortc caller that behaves like a browser) and
``parley call`` (a WAV as the microphone, the reply and client-side measurements out)."""
