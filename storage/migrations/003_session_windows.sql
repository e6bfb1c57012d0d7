-- The conversation window of each session, for deployments without Redis: a restarted
-- server still knows what was said when a page resumes its session. It goes with its
-- session (retention, deleting the user) by cascade.

CREATE TABLE session_windows (
    session_id uuid PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    entries    jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);
