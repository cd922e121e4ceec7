"""Feature views: one definition for batch and stream, training sets, online stores."""
