"""realm_ros.training"""
