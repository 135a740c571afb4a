"""The gateway's HTTP API: the prediction calls (plain JSON and OIP), feedback, reports and admin."""
