"""realm_ros.geometry"""
