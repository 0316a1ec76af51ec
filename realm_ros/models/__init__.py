"""realm_ros.models"""
