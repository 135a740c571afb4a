"""The gateway worker's gRPC server: the Open Inference Protocol over gRPC."""
