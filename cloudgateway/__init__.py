"""cloudgateway: the cloud side of edgeflock — revisioned store, Kubernetes-shaped
HTTP API, node enrollment and the WebSocket hub that keeps edge agents in sync."""
