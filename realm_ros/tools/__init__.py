"""realm_ros.tools"""
