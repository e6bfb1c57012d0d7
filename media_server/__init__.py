"""Media plane: aiortc peers, the paced outbound agent track, calls and their lifecycle."""
