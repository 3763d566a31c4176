"""Load tests over HTTP: ``locustfile`` (checked shop traffic), ``ceiling`` (the framework with no
model), ``compare`` (teacher vs compressed vs ceiling -> reports/loadtest/summary.*)."""
