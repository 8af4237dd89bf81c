@{
    RootModule           = 'BastionTools.psm1'
    ModuleVersion        = '0.1.0'
    CompatiblePSEditions = @('Desktop', 'Core')
    PowerShellVersion    = '5.1'
    DotNetFrameworkVersion = '4.7.2'
    GUID                 = '6f0e7c1a-3b9d-4c55-9a51-2d8f3b7e4a10'
    Author               = 'BastionTools contributors'
    CompanyName          = 'BastionTools'
    Copyright            = '(c) BastionTools contributors. Apache-2.0.'
    Description          = 'Passwordless access to private Amazon RDS PostgreSQL through an EC2 bastion reached with AWS Systems Manager Session Manager, with IAM database authentication. Speaks the Session Manager data channel natively: no session-manager-plugin needed.'

    CmdletsToExport      = @(
        'Connect-IamPostgres'
        'Disconnect-IamPostgres'
        'Get-BastionInstance'
        'Get-BastionSession'
        'Get-RdsIamDatabase'
        'Grant-RdsIamUser'
        'Invoke-IamPostgresQuery'
        'New-RdsIamToken'
        'Revoke-RdsIamUser'
        'Start-BastionSession'
        'Stop-BastionSession'
    )
    FormatsToProcess     = @('BastionTools.Format.ps1xml')
    FunctionsToExport    = @()
    VariablesToExport    = @()
    AliasesToExport      = @()


    PrivateData          = @{
        PSData = @{
            Tags         = @('AWS', 'RDS', 'PostgreSQL', 'IAM', 'SSM', 'SessionManager', 'Bastion', 'PSEdition_Core', 'PSEdition_Desktop', 'Windows', 'Linux', 'MacOS')
            LicenseUri   = 'https://example.invalid/BastionTools/LICENSE'
            ProjectUri   = 'https://example.invalid/BastionTools'
            ReleaseNotes = @'
0.1.0 - first release.
- Credentials resolved as AWS.Tools does; New-RdsIamToken signs RDS IAM authentication tokens.
- Native Session Manager sessions (no session-manager-plugin): Start-BastionSession (port forwarding, shell, command), Get-BastionSession, Stop-BastionSession, Get-BastionInstance.
- Passwordless PostgreSQL through the bastion: Connect-IamPostgres, Invoke-IamPostgresQuery, Disconnect-IamPostgres; Grant-RdsIamUser, Revoke-RdsIamUser.
- AWS CDK infrastructure (VPC, bastion, RDS PostgreSQL with IAM authentication) under infra/.
Full notes: CHANGELOG.md.
'@
        }
    }
}
