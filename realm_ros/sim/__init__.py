"""realm_ros.sim"""
