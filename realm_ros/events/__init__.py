"""realm_ros.events"""
