"""Notifications: POST /users/{id}/notify, GET /notifications/{id}, the inbox."""
