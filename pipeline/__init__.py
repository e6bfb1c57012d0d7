"""The AI side of a call: DSP front end, STT, LLM, TTS, the agent turn loop and memory."""
